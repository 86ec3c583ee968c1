"""Model servers: the policy that decides, the manager that acts, one process, and its files."""
