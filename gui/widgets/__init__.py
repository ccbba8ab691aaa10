"""The dashboard's views. Each widget reads only the state objects it is given."""
