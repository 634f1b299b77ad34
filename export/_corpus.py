"""A small English text that the fixture models' tokenizer and bigram table are built from.

Written for this project (no third-party text). Paragraphs are separated by blank lines; each
paragraph is one training "document" whose first token follows BOS. Plain ASCII only, so every
byte token above 0x7F stays unseen (and therefore rare in generations).
"""

from __future__ import annotations

CORPUS = """\
The small boat left the harbor before sunrise. The water was calm and the air was cold, so the \
two sailors kept their hands in their coats and watched the lights of the town grow faint \
behind them. Nobody spoke for a long time. When the sun came up over the hills, the sea turned \
from black to grey and then to a deep, bright blue.

A computer does only what it is told, but it does it very quickly. The trick is to tell it the \
right thing. Most of the work in a program is not the clever part; it is the careful handling \
of the cases that nobody thought about at first: the empty list, the file that is missing, the \
network that goes away in the middle of a message.

In the morning the market opens early. Farmers bring bread, cheese, apples and honey from the \
villages in the valley, and the people of the town come to buy what they need for the week. \
The children run between the tables while their parents talk about the weather, the price of \
milk, and the new road that the council has promised for many years.

When a model runs on a small device, every joule counts. The battery holds only so much energy, \
and the radio costs power each time it sends a packet. A good plan sends less, waits less, and \
still gives the same answer. That is the whole idea: do the cheap work near the user and the \
hard work on the machine that has power to spare.

She opened the old book and found a letter between the pages. The paper was thin and yellow, \
and the ink had faded, but she could still read the first line. It said that the house had a \
garden once, with roses along the wall and a tree that gave more pears than one family could \
eat in a whole summer.

There are three rules for a good test. It should fail when the code is wrong, it should pass \
when the code is right, and it should tell you why it failed in words that a tired person can \
understand at the end of a long day. A test that only checks that nothing crashed is not a test \
of much at all.

The river runs through the middle of the city. In spring it is fast and brown with snow from \
the mountains; in late summer it is slow and clear, and you can see the stones on the bottom. \
People walk along the bank in the evening, and some of them stop on the bridge to look at the \
water and think about nothing in particular.

We measured the power of the board with a small meter between the supply and the cable. The \
meter reports the voltage and the current ten times a second, and we add up the samples to get \
the energy of each step. The numbers are noisy, so we repeat every run five times and report \
the median, together with the spread, so that a reader can judge the result.

It rained for three days. The roads were full of water, the trains were late, and the shops \
closed early because nobody came. On the fourth day the clouds broke, the wind turned to the \
west, and by noon the whole town was outside again, as if the rain had never happened at all.

To learn a new language, read a little every day and speak as often as you can. Do not worry \
about mistakes; everyone makes them, and they are how you find out what you do not yet know. \
After a year you will be surprised how much you understand, even if you still cannot follow a \
fast conversation in a noisy room.

The old clock in the hall stopped at ten past four, and nobody in the family knew how to fix \
it. For years it stood there, always showing the same time, until a visitor who had worked \
with clocks as a young man opened the case, cleaned the parts, and set it going again with a \
sound that filled the whole house.

Good tools are simple to start and hard to misuse. They give clear errors, they do not hide \
what they are doing, and they leave the system in a clean state when something goes wrong. \
Most of all, they do one job well, so that you can build bigger things by putting small and \
reliable pieces together.
"""


def paragraphs() -> list[str]:
    """The corpus split into paragraphs (one line each), in order."""
    return [p.strip() for p in CORPUS.split("\n\n") if p.strip()]
