attention = 'norm_linear'
