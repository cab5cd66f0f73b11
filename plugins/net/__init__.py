"""Kernel helpers shared by the plugins: netlink links/addresses, nftables, tc, sysctl."""
