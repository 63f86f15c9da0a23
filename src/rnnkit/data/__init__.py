"""Built-in corpora and data sets, and readers of user files."""
