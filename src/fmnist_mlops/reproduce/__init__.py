"""``make reproduce``: rebuild a registered version from its record and judge the rebuild."""
