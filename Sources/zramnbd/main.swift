import ZramDaemon

// argv[0] too: installed as zramnbd-generator (a symlink), it is the systemd generator.
Zramnbd.main(argv: CommandLine.arguments)
