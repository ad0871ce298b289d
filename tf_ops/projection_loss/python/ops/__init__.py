"""TF wrappers of the Projection Loss op and its pure-TF reference."""
