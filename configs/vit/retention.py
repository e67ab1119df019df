attention = 'retention'
