"""Custom search attributes that make contracts findable in the Temporal UI and CLI.

``temporal workflow list --query "OverdueCount > 0"`` works because the contract workflow
keeps these current.  The dev launcher and the test fixtures register exactly this list.
"""

from typing import Any

from temporalio.common import SearchAttributeKey

CONTRACT_ID = SearchAttributeKey.for_keyword("ContractId")
CUSTOMER_NAME = SearchAttributeKey.for_keyword("CustomerName")
CONTRACT_STATUS = SearchAttributeKey.for_keyword("ContractStatus")
OWNER = SearchAttributeKey.for_keyword("Owner")
NEXT_DUE_AT = SearchAttributeKey.for_datetime("NextDueAt")
OVERDUE_COUNT = SearchAttributeKey.for_int("OverdueCount")
# Temporal has no decimal type: Double is good enough to filter and sort on; the exact
# balance is in the workflow state and the database.
OUTSTANDING_AMOUNT = SearchAttributeKey.for_float("OutstandingAmount")

# Highest escalation level reached by any open item: "EscalationLevel >= 2" finds the hot ones.
ESCALATION_LEVEL = SearchAttributeKey.for_int("EscalationLevel")

ALL: list[SearchAttributeKey[Any]] = [
    CONTRACT_ID,
    CUSTOMER_NAME,
    CONTRACT_STATUS,
    OWNER,
    NEXT_DUE_AT,
    OVERDUE_COUNT,
    OUTSTANDING_AMOUNT,
    ESCALATION_LEVEL,
]

# How `temporal server start-dev --search-attribute NAME=TYPE` spells each type.
CLI_TYPES = {
    "KEYWORD": "Keyword",
    "DATETIME": "Datetime",
    "INT": "Int",
    "DOUBLE": "Double",
}


def cli_flags() -> list[str]:
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={CLI_TYPES[key.indexed_value_type.name]}"]
    return flags
