"""Data: load chats in any format, the chat template, the label mask, tokenized chats cached, DPO pairs."""
