from models.base import Base
from models.contract import Contract, ContractEvent, Customer, Installment, Milestone, Payment

__all__ = ["Base", "Contract", "ContractEvent", "Customer", "Installment", "Milestone", "Payment"]
