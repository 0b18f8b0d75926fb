"""lamina.cli"""
