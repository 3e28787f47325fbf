"""Pure command builders: functions that return argv lists.

Nothing here touches the network; only ``ndctl.transport`` joins an argv
list into a command line (``shlex.join``). Tests assert exact argv lists.
"""
