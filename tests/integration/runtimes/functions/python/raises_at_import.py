raise RuntimeError("cannot start")
