"""Next-character prediction on Debian's fortunes with a character LSTM, one client per file."""
