"""
@article{Bepler2019,
title = {Positive-unlabeled convolutional neural networks for particle picking in cryo-electron micrographs},
journal = {Nature Methods},
volume = {16},
number = {11},
pages = {1153--1160},
year = {2019},
author = {Bepler, Tristan and Morin, Andrew and Rapp, Micah and Brasch, Julia and Shapiro, Lawrence and Noble, Alex J. and Berger, Bonnie},
doi = {10.1038/s41592-019-0575-8},
url = {https://doi.org/10.1038/s41592-019-0575-8}
}
"""
