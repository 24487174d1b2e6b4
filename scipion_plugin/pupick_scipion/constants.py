"""Names shared by the plugin's modules."""

# Plugin variables (scipion.conf [PLUGINS] section or the environment)
PUPICK_VAR = 'PUPICK'
PUPICK_DEFAULT = 'pupick'
PUPICK_ACTIVATION_VAR = 'PUPICK_ENV_ACTIVATION'

# Choices offered in the forms; the strings are pupick's own option values.
# New names go last: a saved protocol stores the index of its choice.
ARCHITECTURES = ['resnet8', 'resnet16', 'conv31', 'conv63', 'conv127', 'resnet8n']
DEFAULT_ARCHITECTURE = 'resnet8'
OBJECTIVES = ['ge-binomial', 'ge-kl', 'nnpu', 'pn']
# Label formats for `pupick convert --from`; 'auto' lets pupick decide from the extension.
LABEL_FORMATS = ['auto', 'star', 'cs', 'box', 'eman2', 'topaz', 'csv', 'tsv']

# Extra attribute stored on every picked Coordinate: the CNN score (a logit)
SCORE_ATTR = '_pupickScore'

# Image extensions pupick reads (the naming rule strips exactly one of them)
IMAGE_EXTENSIONS = ('.mrc', '.mrcs', '.tif', '.tiff', '.png', '.jpg', '.jpeg')
