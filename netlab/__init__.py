"""netlab: namespace labs built with our CNI plugins, and a libcni-style runtime."""
