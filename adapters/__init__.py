"""Framework adapters behind one train/predict interface.

Each framework is imported only inside its own module, and only when used.
"""
