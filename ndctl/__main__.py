from ndctl.cli.main import run

run()
