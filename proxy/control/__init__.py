"""Everything that writes rules: the operator actions the CLI and the admin API share."""
