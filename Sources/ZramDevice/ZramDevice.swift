// ZramDevice: placeholder until the module lands.
