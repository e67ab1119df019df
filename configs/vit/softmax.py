attention = 'softmax'
