"""lamina.image"""
