attention = 'cosformer'
