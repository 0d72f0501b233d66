// ZramDaemon: placeholder until the module lands.
