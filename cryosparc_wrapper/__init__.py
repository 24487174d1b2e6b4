"""cryosparc_wrapper"""
