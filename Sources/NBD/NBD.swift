// NBD: placeholder until the module lands.
