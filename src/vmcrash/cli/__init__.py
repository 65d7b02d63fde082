"""The command line: one thin module per verb; ``main`` wires them together lazily."""
