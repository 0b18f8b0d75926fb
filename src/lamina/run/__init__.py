"""lamina.run"""
