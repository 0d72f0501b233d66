import ZramDaemon

Zramnbd.main(arguments: Array(CommandLine.arguments.dropFirst()))
