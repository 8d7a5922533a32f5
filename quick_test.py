"""Check the whole pipeline in a few minutes: 100 chats, 20 optimizer steps.

    python quick_test.py              # GPT-2 from the Hub, or the offline kit when the Hub is unreachable
    python quick_test.py --offline

Uses every setting of train_chatbot.py except those below (all are flags: --help).
"""

import train_chatbot

NUM_TRAIN_SAMPLES = 100
MAX_STEPS = 20
OUTPUT_DIR = "./chatbot-test"

if __name__ == "__main__":
    train_chatbot.main(NUM_TRAIN_SAMPLES=NUM_TRAIN_SAMPLES, MAX_STEPS=MAX_STEPS, OUTPUT_DIR=OUTPUT_DIR)
