"""The built-in samples, generated inside ClickHouse, the same every time: ``sales_data`` (one million
orders) and the two tables it joins with, ``customers`` and ``products``.

Every value is a pure function of a row number or an id through ``cityHash64`` and integer arithmetic (no
``rand()``, no floating point, no clock), so two generations, on any machine, are identical row for row
and "Get the top 5 customers by total sales" always has the same answer. Each sample is generated on its
own: ``customers`` and ``products`` do not read ``sales_data``; they agree with it because the customer
name and region expressions and the product catalogue are defined once, here, and used by all three.

``sales_data`` columns:

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
million.

``customers``, one row per customer id 1..2000 (every id ``sales_data`` can hold): ``customer_id`` UInt32,
``customer_name`` String and ``region`` LowCardinality(String) (both as in ``sales_data``), ``segment`` and
``country`` LowCardinality(String) (a country of the customer's region), ``signup_date`` Date in
2019-01-01 .. 2024-12-31.

``products``, one row per catalogue product (28): ``product``, ``category`` (as in ``sales_data``),
``supplier`` LowCardinality(String) (one of seven, fixed per product), ``list_price`` Decimal(10, 2) (the
``unit_price`` of ``sales_data``) and ``unit_cost`` Decimal(10, 2), 45-80 % of the list price in exact cents.

``customers`` and ``products`` have a fixed size: they take no ``rows``.
"""

from __future__ import annotations

import msgspec

from modelbus.config.model import DatasetExample
from modelbus.runtime.clickhouse.names import TableRef, quote_string

__all__ = (
    "CUSTOMERS",
    "PRODUCTS",
    "SALES_DATA",
    "SAMPLES",
    "SampleSpec",
    "create_statement",
    "marker",
)

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
# (region, its countries): a customer's country is one of its region's
_REGIONS = (
    ("North America", ("United States", "Canada", "Mexico")),
    ("Europe", ("Germany", "France", "United Kingdom", "Italy")),
    ("Asia Pacific", ("Japan", "Australia", "India", "Singapore")),
    ("Latin America", ("Brazil", "Argentina", "Chile", "Colombia")),
    ("Middle East & Africa", ("United Arab Emirates", "Saudi Arabia", "South Africa", "Nigeria")),
)
# one in ten customers per entry: 40 % Consumer, 30 % Small Business, 20 % Enterprise, 10 % Public Sector
_SEGMENTS = ("Consumer",) * 4 + ("Small Business",) * 3 + ("Enterprise",) * 2 + ("Public Sector",)
# (product, category, list price, supplier): sales_data sells these at the list price
_CATALOG = (
    ("Laptop Pro 14", "Electronics", "1299.00", "Northwind Electronics"),
    ("Laptop Air 13", "Electronics", "999.00", "Northwind Electronics"),
    ("4K Monitor 27", "Electronics", "429.99", "Vertex Peripherals"),
    ("Wireless Mouse", "Electronics", "29.99", "Vertex Peripherals"),
    ("Mechanical Keyboard", "Electronics", "119.50", "Vertex Peripherals"),
    ("Noise-Cancelling Headphones", "Electronics", "249.00", "Vertex Peripherals"),
    ("Smartphone X", "Electronics", "899.00", "Northwind Electronics"),
    ("Tablet 11", "Electronics", "549.00", "Northwind Electronics"),
    ("Office Chair", "Furniture", "289.00", "Oakline Furniture"),
    ("Standing Desk", "Furniture", "649.00", "Oakline Furniture"),
    ("Bookshelf", "Furniture", "159.90", "Oakline Furniture"),
    ("Desk Lamp", "Furniture", "39.95", "Oakline Furniture"),
    ("Espresso Machine", "Home & Kitchen", "399.00", "Hearth & Harvest"),
    ("Blender", "Home & Kitchen", "89.99", "Hearth & Harvest"),
    ("Cookware Set", "Home & Kitchen", "199.00", "Hearth & Harvest"),
    ("Coffee Beans 1kg", "Grocery", "24.50", "Hearth & Harvest"),
    ("Green Tea 100ct", "Grocery", "12.99", "Hearth & Harvest"),
    ("Running Shoes", "Sports", "129.00", "Summit Sports Supply"),
    ("Yoga Mat", "Sports", "34.00", "Summit Sports Supply"),
    ("Mountain Bike", "Sports", "1150.00", "Summit Sports Supply"),
    ("Tennis Racket", "Sports", "179.00", "Summit Sports Supply"),
    ("Backpack", "Accessories", "79.00", "Urban Trail Accessories"),
    ("Sunglasses", "Accessories", "149.00", "Urban Trail Accessories"),
    ("Wristwatch", "Accessories", "329.00", "Urban Trail Accessories"),
    ("Printer Paper (5 reams)", "Office Supplies", "44.99", "Paperline Office Supply"),
    ("Gel Pens (12)", "Office Supplies", "9.99", "Paperline Office Supply"),
    ("Notebook A5", "Office Supplies", "6.50", "Paperline Office Supply"),
    ("Stapler", "Office Supplies", "15.75", "Paperline Office Supply"),
)
_CUSTOMERS = len(_FIRST_NAMES) * len(_LAST_NAMES)  # 2000: every id gets its own name
_NAME_STRIDE = 1237  # coprime with 2000, so (id - 1) * stride % 2000 is a permutation of the names

_SALES_COLUMNS = """(
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
_CUSTOMER_COLUMNS = """(
    customer_id UInt32,
    customer_name String,
    segment LowCardinality(String),
    region LowCardinality(String),
    country LowCardinality(String),
    signup_date Date
)"""
_PRODUCT_COLUMNS = """(
    product String,
    category LowCardinality(String),
    supplier LowCardinality(String),
    list_price Decimal(10, 2),
    unit_cost Decimal(10, 2)
)"""
_SIGNUP_FIRST = "2019-01-01"
_SIGNUP_DAYS = 2192  # 2019-01-01 .. 2024-12-31, both included
_COST_PERCENT = (45, 79)  # rounded up to the cent: 45 % <= cost <= 80 % for every price >= 1.00


class SampleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A built-in sample: its name, its default size, its prompt description and its generator version.

    ``resizable`` is false for a sample whose size is fixed by what it describes (2000 customers, 28
    products): ``params.rows`` is refused for it. Bumping ``version`` regenerates existing tables.
    """

    name: str
    rows: int
    description: str
    version: int
    resizable: bool = True
    examples: tuple[DatasetExample, ...] = ()  # worked examples for NSQL prompts over this sample


SALES_DATA = SampleSpec(
    name="sales_data",
    rows=1_000_000,
    version=2,
    description=(
        "Sales orders, one row per order (2022-2025): the customer who ordered (customer_id, customer_name, "
        "region), the product and its category, quantity, unit_price and total = unit_price * quantity."
    ),
    examples=(
        DatasetExample(
            question="How many units of each category were sold in June 2024?",
            sql="SELECT category, sum(quantity) AS units FROM sales_data "
            "WHERE order_date >= '2024-06-01' AND order_date < '2024-07-01' "
            "GROUP BY category ORDER BY units DESC",
        ),
        DatasetExample(
            question="Which customers spent more than 500,000 in 2025? Show their totals.",
            sql="SELECT customer_id, customer_name, sum(total) AS total_spent FROM sales_data "
            "WHERE toYear(order_date) = 2025 GROUP BY customer_id, customer_name "
            "HAVING total_spent > 500000 ORDER BY total_spent DESC",
        ),
        DatasetExample(
            question="What was the average number of orders per customer in 2023?",
            sql="SELECT avg(orders) AS avg_orders_per_customer FROM (SELECT customer_id, count() AS orders "
            "FROM sales_data WHERE toYear(order_date) = 2023 GROUP BY customer_id)",
        ),
        DatasetExample(
            question="What is the 75th percentile of order quantity in each region?",
            sql="SELECT region, quantileExact(0.75)(quantity) AS p75_quantity FROM sales_data "
            "GROUP BY region",
        ),
    ),
)
CUSTOMERS = SampleSpec(
    name="customers",
    rows=_CUSTOMERS,
    version=1,
    resizable=False,
    description=(
        "Customers, one row per customer (customer_id 1-2000): customer_name, segment (Consumer, Small "
        "Business, Enterprise, Public Sector), region, country and signup_date. Joins sales_data on "
        "customer_id; customer_name and region are the same as in sales_data."
    ),
    examples=(
        DatasetExample(
            question="What is the average quantity per order of customers who signed up in 2022, by segment?",
            sql="SELECT c.segment AS segment, avg(s.quantity) AS avg_quantity FROM sales_data AS s "
            "INNER JOIN customers AS c ON c.customer_id = s.customer_id "
            "WHERE toYear(c.signup_date) = 2022 GROUP BY segment",
        ),
    ),
)
PRODUCTS = SampleSpec(
    name="products",
    rows=len(_CATALOG),
    version=1,
    resizable=False,
    description=(
        "The product catalogue, one row per product (28): category, supplier, list_price and unit_cost. "
        "Joins sales_data on product; sales_data.unit_price is list_price, so an order's cost is "
        "unit_cost * quantity and its margin total - unit_cost * quantity."
    ),
    examples=(
        DatasetExample(
            question="How many orders of each supplier's products were placed in 2024?",
            sql="SELECT p.supplier AS supplier, count() AS orders FROM sales_data AS s "
            "INNER JOIN products AS p ON p.product = s.product "
            "WHERE toYear(s.order_date) = 2024 GROUP BY supplier ORDER BY orders DESC",
        ),
        DatasetExample(
            question="What was the margin of Electronics orders in North America in 2024?",
            sql="SELECT sum(s.total - p.unit_cost * s.quantity) AS margin FROM sales_data AS s "
            "INNER JOIN products AS p ON p.product = s.product WHERE s.category = 'Electronics' "
            "AND s.region = 'North America' AND toYear(s.order_date) = 2024",
        ),
    ),
)
SAMPLES: dict[str, SampleSpec] = {spec.name: spec for spec in (SALES_DATA, CUSTOMERS, PRODUCTS)}


def marker(spec: SampleSpec, rows: int) -> str:
    """The table comment that says which generator made the table and with how many rows."""
    return f"modelbus:sample:{spec.name}:v{spec.version}:rows={rows}"


def create_statement(table: TableRef, rows: int | None = None, *, spec: SampleSpec = SALES_DATA) -> str:
    """``CREATE OR REPLACE TABLE ... AS SELECT``: builds the sample ``spec`` and swaps it in atomically.

    ``rows`` (default: the sample's own size) applies to ``sales_data`` only; the fixed-size samples are
    always complete. The table comment is :func:`marker`, so a later start can tell the table is complete.
    """
    if spec == CUSTOMERS:
        return _customers_statement(table)
    if spec == PRODUCTS:
        return _products_statement(table)
    return _sales_statement(table, spec.rows if rows is None else rows)


def _array(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(quote_string(v) for v in values) + "]"


def _customer_name(customer_id: str) -> str:
    """The name of customer ``customer_id`` (an SQL expression): the one definition ``sales_data`` and
    ``customers`` share, so their names agree. Ids 1..2000 get 2000 distinct names."""
    slot = f"((toUInt32({customer_id}) - 1) * {_NAME_STRIDE} % {_CUSTOMERS})"
    return (
        f"concat({_array(_FIRST_NAMES)}[1 + {slot} % {len(_FIRST_NAMES)}], ' ', "
        f"{_array(_LAST_NAMES)}[1 + intDiv({slot}, {len(_FIRST_NAMES)})])"
    )


def _region_index(customer_id: str) -> str:
    """The 1-based index in ``_REGIONS`` of the customer's region: the hash of the id as a UInt32 (the
    hash depends on the type, so both samples must hash the same type)."""
    return f"(1 + cityHash64(toUInt32({customer_id}), 'region') % {len(_REGIONS)})"


def _region(customer_id: str) -> str:
    """The customer's region (an SQL expression), shared by ``sales_data`` and ``customers``."""
    return f"{_array([region for region, _ in _REGIONS])}[{_region_index(customer_id)}]"


def _country(customer_id: str) -> str:
    """One of the countries of the customer's region, fixed per customer."""
    countries = "[" + ", ".join(_array(list(names)) for _, names in _REGIONS) + "]"
    choices = f"{countries}[{_region_index(customer_id)}]"
    return f"{choices}[1 + cityHash64(toUInt32({customer_id}), 'country') % length({choices})]"


def _sales_statement(table: TableRef, rows: int) -> str:
    """The ``sales_data`` generator: ``rows`` orders, each a function of its row number."""
    catalog = (
        "["
        + ", ".join(f"({quote_string(p)}, {quote_string(c)}, {quote_string(v)})" for p, c, v, _ in _CATALOG)
        + "]"
    )
    n = _CUSTOMERS + 1  # a, b in [0, n): 1 + a * b div n is in 1 .. _CUSTOMERS, skewed towards 1
    return f"""
CREATE OR REPLACE TABLE {table.sql} {_SALES_COLUMNS}
ENGINE = MergeTree ORDER BY order_id
COMMENT {quote_string(marker(SALES_DATA, rows))}
AS
WITH
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
        {_customer_name("customer_id")} AS customer_name,
        catalog[1 + cityHash64(number, 'product') % length(catalog)] AS item,
        {_region("customer_id")} AS region,
        toUInt16(if(cityHash64(number, 'bulk') % 20 = 0,
                    5 + cityHash64(number, 'qty') % 16,
                    1 + cityHash64(number, 'qty') % 4)) AS quantity
    FROM numbers({rows})
)
"""  # noqa: S608 - trusted DDL: constants and a quoted table name


def _customers_statement(table: TableRef) -> str:
    """The ``customers`` generator: ids 1..2000, names and regions from the ``sales_data`` expressions."""
    return f"""
CREATE OR REPLACE TABLE {table.sql} {_CUSTOMER_COLUMNS}
ENGINE = MergeTree ORDER BY customer_id
COMMENT {quote_string(marker(CUSTOMERS, CUSTOMERS.rows))}
AS
SELECT
    customer_id,
    {_customer_name("customer_id")} AS customer_name,
    {_array(list(_SEGMENTS))}[1 + cityHash64(customer_id, 'segment') % {len(_SEGMENTS)}] AS segment,
    {_region("customer_id")} AS region,
    {_country("customer_id")} AS country,
    toDate({quote_string(_SIGNUP_FIRST)}) + cityHash64(customer_id, 'signup') % {_SIGNUP_DAYS} AS signup_date
FROM (SELECT toUInt32(number + 1) AS customer_id FROM numbers({_CUSTOMERS}))
"""  # noqa: S608 - trusted DDL: constants and a quoted table name


def _products_statement(table: TableRef) -> str:
    """The ``products`` generator: the catalogue, with a cost of 45-80 % of the list price.

    The percentage is a hash of the product name; the cost is computed in integer cents and rounded up,
    so it is exact and never below 45 %; the top percentage is 79 so rounding cannot pass 80 %.
    """
    catalog = (
        "["
        + ", ".join(
            f"({quote_string(p)}, {quote_string(c)}, {quote_string(s)}, {quote_string(v)})"
            for p, c, v, s in _CATALOG
        )
        + "]"
    )
    low, high = _COST_PERCENT
    return f"""
CREATE OR REPLACE TABLE {table.sql} {_PRODUCT_COLUMNS}
ENGINE = MergeTree ORDER BY product
COMMENT {quote_string(marker(PRODUCTS, PRODUCTS.rows))}
AS
SELECT product, category, supplier, list_price,
    CAST(intDiv(price_cents * cost_percent + 99, 100) AS Decimal(10, 2)) / 100 AS unit_cost
FROM
(
    SELECT
        item.1 AS product, item.2 AS category, item.3 AS supplier, item.4 AS list_price,
        toUInt64(list_price * 100) AS price_cents,
        {low} + cityHash64(product, 'cost') % {high - low + 1} AS cost_percent
    FROM (SELECT arrayJoin(CAST({catalog} AS Array(Tuple(String, String, String, Decimal(10, 2))))) AS item)
)
"""  # noqa: S608 - trusted DDL: constants and a quoted table name
