attention = 'performer'
