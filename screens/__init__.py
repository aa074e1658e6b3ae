"""The Textual console: screens and widgets over the kconsole engine."""
