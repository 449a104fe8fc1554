"""Reading worklist models (claims, saved filters) are added by the reporting issue."""
