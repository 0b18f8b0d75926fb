"""lamina.transport"""
