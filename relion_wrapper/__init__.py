"""relion_wrapper"""
