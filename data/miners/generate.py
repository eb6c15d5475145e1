"""Generate the miner-listing normaliser dataset: sellers' shorthand listings → the standard name.

    python data/miners/generate.py            # writes data/miners/listings.jsonl (deterministic: --seed)

Each line is `{"input": listing, "output": standard, "group": "<model>|<price>"}`, e.g.
`m50s 26w 124t gtd 1020u $1020.0` → `MicroBT Whatsminer M50S - 124.0th/t $1020.0`. The standard form is
`<Brand> <Series> <Model> - <hashrate><unit>/t $<price>`, the hashrate in the model's own unit (th for SHA-256 and
kHeavyHash machines, mh for Scrypt ones) with one decimal, the price in USD(T) with one decimal.

Listings carry the noise sellers use: any case, the brand left out or given as a nickname (蚂蚁, 神马, 阿瓦隆), the
model written several ways (`s19jpro`, `S19J PRO`, `19j pro`), watts per terahash (`26w`, `26J/T`), `gtd`, prices
as `1020u`, `1020usdt`, `$1020` or both, extra words (现货, 二手, 包邮, in stock, psu included …) and fields in any
order. Every fact of the standard form is in its listing, so a perfect normaliser exists.

`prepare --group-field group` splits by `group`, so a model-and-price combination in the test split never occurs in
training: the model must read the numbers, not remember them.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Miner:
    brand: str  # as in the standard form
    series: str
    model: str
    unit: str  # th or mh
    rates: tuple[float, ...]  # hashrates sold, in `unit`/s
    efficiency: float | None  # J/TH as sellers quote it ("26w"); None where they quote total watts
    usd_per_unit: float  # street price per unit of hashrate, for plausible prices


BITMAIN, MICROBT, CANAAN = ("Bitmain", "Antminer"), ("MicroBT", "Whatsminer"), ("Canaan", "Avalon")

MINERS = [
    Miner(*BITMAIN, "S19", "th", (82, 86, 90, 95), 34.5, 4.0),
    Miner(*BITMAIN, "S19 Pro", "th", (100, 104, 110), 29.5, 5.5),
    Miner(*BITMAIN, "S19j Pro", "th", (96, 100, 104), 29.5, 5.0),
    Miner(*BITMAIN, "S19k Pro", "th", (115, 120), 23.0, 7.5),
    Miner(*BITMAIN, "S19 XP", "th", (134, 140, 141), 21.5, 9.0),
    Miner(*BITMAIN, "S21", "th", (188, 195, 200), 17.5, 14.0),
    Miner(*BITMAIN, "S21 Pro", "th", (220, 234, 245), 15.0, 17.0),
    Miner(*BITMAIN, "S21 XP", "th", (270,), 13.5, 20.0),
    Miner(*BITMAIN, "T21", "th", (180, 190), 19.0, 11.0),
    Miner(*BITMAIN, "L7", "mh", (8800, 9050, 9300, 9500), None, 0.45),
    Miner(*BITMAIN, "L9", "mh", (15000, 16000, 17000), None, 0.42),
    Miner(*BITMAIN, "KS3", "th", (8.3, 9.0, 9.4), None, 120.0),
    Miner(*BITMAIN, "KS5 Pro", "th", (21,), None, 95.0),
    Miner(*MICROBT, "M30S", "th", (86, 88, 90, 92), 38.0, 3.5),
    Miner(*MICROBT, "M30S+", "th", (100, 102), 34.0, 4.2),
    Miner(*MICROBT, "M30S++", "th", (106, 108, 110, 112), 31.0, 5.0),
    Miner(*MICROBT, "M50", "th", (114, 118, 120), 29.0, 6.5),
    Miner(*MICROBT, "M50S", "th", (124, 126, 128, 130), 26.0, 8.2),
    Miner(*MICROBT, "M50S++", "th", (140, 146), 22.0, 10.0),
    Miner(*MICROBT, "M60", "th", (170, 172, 176), 19.9, 11.5),
    Miner(*MICROBT, "M60S", "th", (180, 186), 18.5, 13.5),
    Miner(*MICROBT, "M63S", "th", (390,), 18.5, 12.0),
    Miner(*CANAAN, "A1246", "th", (85, 90, 93), 38.0, 3.2),
    Miner(*CANAAN, "A1346", "th", (104, 107, 110), 30.0, 5.2),
    Miner(*CANAAN, "A1366", "th", (126, 130), 27.0, 7.0),
    Miner(*CANAAN, "A1466", "th", (150,), 21.5, 9.5),
    Miner(*CANAAN, "A1566", "th", (185,), 18.5, 12.5),
]

BRAND_WORDS = {
    "Bitmain": ["bitmain", "antminer", "bitmain antminer", "蚂蚁", "蚂蚁矿机", "Antminer"],
    "MicroBT": ["whatsminer", "microbt", "microbt whatsminer", "神马", "神马矿机", "WhatsMiner"],
    "Canaan": ["avalon", "canaan", "canaan avalon", "阿瓦隆", "avalonminer", "Avalon"],
}
EXTRAS = [
    "现货",
    "二手",
    "包邮",
    "全新",
    "9成新",
    "深圳仓",
    "香港仓",
    "in stock",
    "used",
    "new",
    "ready stock",
    "psu included",
    "带电源",
    "moq 5",
    "hot",
    "warranty",
    "期货",
    "fast ship",
]


def model_spellings(model: str) -> list[str]:
    """How sellers write a model name: with and without the space, compact `pro`/`xp`, the leading letter dropped."""
    words = model.split()
    joined = "".join(words)
    out = {model, joined, "-".join(words)}
    if model[0] in "SM" and model[1].isdigit() and not joined[1:].isdigit():
        out.add(model[1:])  # "50s" for M50S, "19j pro" for S19j Pro (never a bare "50" or "21")
    if model.endswith("++"):
        out.add(model[:-2] + " plus plus")
    elif model.endswith("+"):
        out.add(model[:-1] + " plus")
    return sorted(out)


def cased(text: str, rng: random.Random) -> str:
    r = rng.random()
    return text.lower() if r < 0.55 else text.upper() if r < 0.75 else text


def number(x: float) -> str:
    """A number as a seller types it: no trailing .0."""
    return f"{x:g}"


def hashrate_text(rate: float, unit: str, rng: random.Random) -> str:
    letter = unit[0]
    forms = [
        f"{number(rate)}{letter}",
        f"{number(rate)}{unit}",
        f"{number(rate)}{unit}/s",
        f"{number(rate)} {unit}",
        f"{number(rate)}{letter}/s",
    ]
    text = rng.choice(forms)
    return text.upper() if rng.random() < 0.4 else text


def price_text(price: float, rng: random.Random) -> str:
    p = number(price)
    forms = [
        f"{p}u",
        f"{p}U",
        f"{p}usdt",
        f"{p} USDT",
        f"${p}",
        f"${price:.1f}",
        f"{p}u ${price:.1f}",
        f"{p}$",
        f"usdt {p}",
        f"{p}刀",
    ]
    return rng.choice(forms)


def listing(m: Miner, rate: float, price: float, rng: random.Random) -> str:
    """One noisy listing of `m` at `rate` and `price`."""
    model = cased(rng.choice(model_spellings(m.model)), rng)
    head = [model]
    if rng.random() < 0.4:
        brand = rng.choice(BRAND_WORDS[m.brand])
        head = [brand, model] if rng.random() < 0.85 else [model, brand]
    # Brand and model run together ("蚂蚁L7") only when the model keeps its letter: "bitmain19 xp" nobody writes.
    spaced = rng.random() < 0.8 or not model[0].isalpha()
    fields = [" ".join(head) if spaced else "".join(head), hashrate_text(rate, m.unit, rng)]
    if m.efficiency is not None and rng.random() < 0.6:
        fields.append(
            rng.choice(
                [
                    f"{number(m.efficiency)}w",
                    f"{number(m.efficiency)}W",
                    f"{number(m.efficiency)}j/t",
                    f"{number(m.efficiency)}J/T",
                ]
            )
        )
    if rng.random() < 0.35:
        fields.append(rng.choice(["gtd", "GTD", "guaranteed"]))
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        fields.append(rng.choice(EXTRAS))
    if rng.random() < 0.3:
        rng.shuffle(fields)  # sellers do not agree on an order
    fields.append(price_text(price, rng))
    if rng.random() < 0.15:
        fields.insert(0, fields.pop())  # price first
    sep = rng.choice([" ", " ", " ", ", ", " | ", " / "])
    return sep.join(fields)


def standard(m: Miner, rate: float, price: float) -> str:
    return f"{m.brand} {m.series} {m.model} - {rate:.1f}{m.unit}/t ${price:.1f}"


def prices(m: Miner, rate: float, rng: random.Random, n: int) -> list[float]:
    """`n` distinct plausible prices around the street price, rounded as sellers do (to 5 or 10, now and then .5)."""
    out: set[float] = set()
    while len(out) < n:
        p = rate * m.usd_per_unit * rng.uniform(0.75, 1.25)
        p = round(p / 10) * 10 if rng.random() < 0.6 else round(p / 5) * 5
        if rng.random() < 0.08:
            p += 0.5
        out.add(float(max(p, 50)))
    return sorted(out)


def generate(seed: int, prices_per_rate: int, listings_per_price: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for m in MINERS:
        for rate in m.rates:
            for price in prices(m, rate, rng, prices_per_rate):
                for _ in range(listings_per_price):
                    rows.append(
                        {
                            "input": listing(m, rate, price, rng),
                            "output": standard(m, rate, price),
                            "group": f"{m.model}|{number(price)}",
                        }
                    )
    rng.shuffle(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("listings.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prices", type=int, default=8, help="prices per model and hashrate")
    ap.add_argument("--listings", type=int, default=2, help="listings per model, hashrate and price")
    args = ap.parse_args()
    rows = generate(args.seed, args.prices, args.listings)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} listings of {len(MINERS)} models written to {args.out}")


if __name__ == "__main__":
    main()
