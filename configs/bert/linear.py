attention = 'linear'
