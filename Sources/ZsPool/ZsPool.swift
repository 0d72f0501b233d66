// ZsPool: placeholder until the module lands.
