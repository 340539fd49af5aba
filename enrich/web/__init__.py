"""HTTP routes: thin trio shells over the sans-I/O core and the services."""
