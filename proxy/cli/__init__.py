"""The command line, a leaf: nothing imports it. One module per command group; serve and the
demo it loads on embedded defaults."""
