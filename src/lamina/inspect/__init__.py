"""lamina.inspect"""
