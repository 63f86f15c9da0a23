"""Cell families (temporary)."""
