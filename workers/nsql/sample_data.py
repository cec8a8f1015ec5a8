"""The built-in ``sales_data`` sample: one million orders, generated inside ClickHouse, the same every time.

Every value is a pure function of the row number through ``cityHash64`` and integer arithmetic (no
``rand()``, no floating point, no clock), so two generations, on any machine, are identical row for row
and "Get the top 5 customers by total sales" always has the same answer.

Columns:

- ``order_id`` UInt64, 1..rows, in date order;
- ``order_date`` Date, spread evenly over 2022-01-01 .. 2025-12-31;
- ``customer_id`` UInt32 (1..2000) and ``customer_name`` LowCardinality(String), one name per id. Ids are
  skewed (the product of two uniform draws), so a few customers buy a lot and a top-N has clear winners;
- ``product``, ``category`` LowCardinality(String) from a fixed 28-product catalogue;
- ``region`` LowCardinality(String), one of five, fixed per customer;
- ``quantity`` UInt16 (1-4, and 5-20 for one order in twenty);
- ``unit_price`` Decimal(10, 2), the product's list price;
- ``total`` Decimal(18, 2) = ``unit_price * quantity``, exact: money stays decimal, never float.

The table has an aggregate projection by customer (and region), which ClickHouse uses by itself for
per-customer totals: "top 5 customers by total sales" reads about 2,000 pre-aggregated rows instead of a
million (a few milliseconds instead of ~80 ms on two cores).
"""

from __future__ import annotations

import msgspec

from workers.nsql.names import TableRef, quote_string

__all__ = ("SALES_DATA", "SAMPLES", "SampleSpec", "create_statement", "marker")

_VERSION = 2

# fmt: off
_FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "Mateo", "Isabella", "Lucas", "Mia",
    "Levi", "Amelia", "Asher", "Harper", "James", "Evelyn", "Leo", "Luna", "Ezra", "Aria", "Luca", "Chloe",
    "Hudson", "Nora", "Kai", "Zoe", "Aiden", "Lily", "Omar", "Hana", "Ravi", "Mei", "Diego", "Sofia",
    "Yuki", "Amara", "Felix", "Ingrid", "Tariq",
)
_LAST_NAMES = (
    "Smith", "Johnson", "Garcia", "Brown", "Jones", "Miller", "Davis", "Rodriguez", "Martinez", "Lopez",
    "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
    "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green", "Nguyen",
    "Kim", "Patel", "Singh", "Chen", "Tanaka", "Muller", "Rossi", "Dubois", "Silva", "Novak", "Ivanova",
    "Haddad", "Okafor", "Larsen", "Costa", "Kowalski", "Schmidt", "Fischer", "Weber",
)
# fmt: on
_REGIONS = ("North America", "Europe", "Asia Pacific", "Latin America", "Middle East & Africa")
_CATALOG = (
    ("Laptop Pro 14", "Electronics", "1299.00"),
    ("Laptop Air 13", "Electronics", "999.00"),
    ("4K Monitor 27", "Electronics", "429.99"),
    ("Wireless Mouse", "Electronics", "29.99"),
    ("Mechanical Keyboard", "Electronics", "119.50"),
    ("Noise-Cancelling Headphones", "Electronics", "249.00"),
    ("Smartphone X", "Electronics", "899.00"),
    ("Tablet 11", "Electronics", "549.00"),
    ("Office Chair", "Furniture", "289.00"),
    ("Standing Desk", "Furniture", "649.00"),
    ("Bookshelf", "Furniture", "159.90"),
    ("Desk Lamp", "Furniture", "39.95"),
    ("Espresso Machine", "Home & Kitchen", "399.00"),
    ("Blender", "Home & Kitchen", "89.99"),
    ("Cookware Set", "Home & Kitchen", "199.00"),
    ("Coffee Beans 1kg", "Grocery", "24.50"),
    ("Green Tea 100ct", "Grocery", "12.99"),
    ("Running Shoes", "Sports", "129.00"),
    ("Yoga Mat", "Sports", "34.00"),
    ("Mountain Bike", "Sports", "1150.00"),
    ("Tennis Racket", "Sports", "179.00"),
    ("Backpack", "Accessories", "79.00"),
    ("Sunglasses", "Accessories", "149.00"),
    ("Wristwatch", "Accessories", "329.00"),
    ("Printer Paper (5 reams)", "Office Supplies", "44.99"),
    ("Gel Pens (12)", "Office Supplies", "9.99"),
    ("Notebook A5", "Office Supplies", "6.50"),
    ("Stapler", "Office Supplies", "15.75"),
)
_CUSTOMERS = len(_FIRST_NAMES) * len(_LAST_NAMES)  # 2000: every id gets its own name
_NAME_STRIDE = 1237  # coprime with 2000, so (id - 1) * stride % 2000 is a permutation of the names

_COLUMNS = """(
    order_id UInt64,
    order_date Date,
    customer_id UInt32,
    customer_name LowCardinality(String),
    product LowCardinality(String),
    category LowCardinality(String),
    region LowCardinality(String),
    quantity UInt16,
    unit_price Decimal(10, 2),
    total Decimal(18, 2),
    PROJECTION by_customer
    (
        SELECT customer_id, customer_name, region, sum(total), sum(quantity), count()
        GROUP BY customer_id, customer_name, region
    )
)"""


class SampleSpec(msgspec.Struct, frozen=True):
    name: str
    rows: int
    description: str


SALES_DATA = SampleSpec(
    name="sales_data",
    rows=1_000_000,
    description=(
        "Sales orders, one row per order (2022-2025): the customer who ordered (customer_id, customer_name, "
        "region), the product and its category, quantity, unit_price and total = unit_price * quantity."
    ),
)
SAMPLES: dict[str, SampleSpec] = {SALES_DATA.name: SALES_DATA}


def marker(spec: SampleSpec, rows: int) -> str:
    """The table comment that says which generator made the table and with how many rows."""
    return f"modelbus:sample:{spec.name}:v{_VERSION}:rows={rows}"


def _array(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(quote_string(v) for v in values) + "]"


def create_statement(table: TableRef, rows: int = SALES_DATA.rows) -> str:
    """``CREATE OR REPLACE TABLE ... AS SELECT``: builds the sample and swaps it in atomically.

    The table comment is :func:`marker`, so a later start can tell the table is already complete.
    """
    catalog = (
        "["
        + ", ".join(f"({quote_string(p)}, {quote_string(c)}, {quote_string(v)})" for p, c, v in _CATALOG)
        + "]"
    )
    n = _CUSTOMERS + 1  # a, b in [0, n): 1 + a * b div n is in 1 .. _CUSTOMERS, skewed towards 1
    return f"""
CREATE OR REPLACE TABLE {table.sql} {_COLUMNS}
ENGINE = MergeTree ORDER BY order_id
COMMENT {quote_string(marker(SALES_DATA, rows))}
AS
WITH
    {_array(_FIRST_NAMES)} AS first_names,
    {_array(_LAST_NAMES)} AS last_names,
    {_array(_REGIONS)} AS regions,
    CAST({catalog} AS Array(Tuple(String, String, Decimal(10, 2)))) AS catalog
SELECT
    order_id, order_date, customer_id, customer_name,
    item.1 AS product, item.2 AS category, region, quantity,
    item.3 AS unit_price,
    unit_price * quantity AS total
FROM
(
    SELECT
        number + 1 AS order_id,
        toDate('2022-01-01') + intDiv(number * 1461, {rows}) AS order_date,
        toUInt32(1 + intDiv((cityHash64(number, 'c1') % {n}) * (cityHash64(number, 'c2') % {n}), {n}))
            AS customer_id,
        concat(
            first_names[1 + ((customer_id - 1) * {_NAME_STRIDE} % {_CUSTOMERS}) % {len(_FIRST_NAMES)}], ' ',
            last_names[1 + intDiv((customer_id - 1) * {_NAME_STRIDE} % {_CUSTOMERS}, {len(_FIRST_NAMES)})]
        ) AS customer_name,
        catalog[1 + cityHash64(number, 'product') % length(catalog)] AS item,
        regions[1 + cityHash64(customer_id, 'region') % length(regions)] AS region,
        toUInt16(if(cityHash64(number, 'bulk') % 20 = 0,
                    5 + cityHash64(number, 'qty') % 16,
                    1 + cityHash64(number, 'qty') % 4)) AS quantity
    FROM numbers({rows})
)
"""  # noqa: S608 - trusted DDL: constants and a quoted table name
