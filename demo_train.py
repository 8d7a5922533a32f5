"""A middle-sized run: 1,000 chats, enough to see coherent answers appear.

    python demo_train.py
    python demo_train.py --num-epochs 1 --offline

Uses every setting of train_chatbot.py except the two below (all are flags: --help).
"""

import train_chatbot

NUM_TRAIN_SAMPLES = 1000
OUTPUT_DIR = "./chatbot-demo"

if __name__ == "__main__":
    train_chatbot.main(NUM_TRAIN_SAMPLES=NUM_TRAIN_SAMPLES, OUTPUT_DIR=OUTPUT_DIR)
