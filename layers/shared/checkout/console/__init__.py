"""The operator console: a local web page that calls the admin API signed with the operator's own AWS identity."""
