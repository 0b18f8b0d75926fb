"""lamina.store"""
