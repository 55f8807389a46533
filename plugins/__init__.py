"""Built-in recoverd plugins, registered through the ``recoverd`` entry-point group."""
