attention = 'local'
