from ndctl.cli.main import entry

entry()
