"""The command line's commands, one module each (`chitchat NAME` is `chitchat.commands.NAME`, with `-` as `_`):
each defines `add_arguments(parser)` and `run(args)` over the library's functions below it in the flow."""
