# A class's term of work in one company, made with a real Tryton client (proteus), for the
# major-upgrade tests (the data the 1.x -> 2.0 migration must carry across unchanged): parties,
# products on one account category (French chart: 7071 revenue, 6071 expense, VAT 20 %), customer
# invoices spread over the first months of the fiscal year, each posted then paid in full on its
# own date through a bank payment method (journal CASH, account 5121), and the first month's
# period closed once its moves are posted. Invoices are posted in date order (Tryton refuses an
# invoice dated before the last posted one of its sequence).
# The caller has connected proteus (config, Model, Wizard) and set `d`: year (the database's
# fiscal year), parties (20), products (5), invoices (50), months (3), close (True); prints one
# JSON line with what was made.
Party = Model.get('party.party'); Template = Model.get('product.template'); Category = Model.get('product.category')
Account = Model.get('account.account'); Tax = Model.get('account.tax'); Invoice = Model.get('account.invoice')
Uom = Model.get('product.uom'); Journal = Model.get('account.journal'); Period = Model.get('account.period')
PaymentMethod = Model.get('account.invoice.payment.method')
year = int(d['year'])
n_parties, n_products, n_invoices, n_months = (int(d.get(k, v)) for k, v in (('parties', 20), ('products', 5), ('invoices', 50), ('months', 3)))
parties = [Party(name='Client %02d' % (i + 1)) for i in range(n_parties)]
Party.save(parties)
cat = Category(name='Marchandises', accounting=True)
cat.account_revenue, = Account.find([('code', '=', '7071')])
cat.account_expense, = Account.find([('code', '=', '6071')])
tva, = Tax.find([('name', '=', 'T.V.A. Vente de biens Taux Normal'), ('parent', '=', None)])
cat.customer_taxes.append(Tax(tva.id))
cat.save()
unit, = Uom.find([('symbol', '=', 'u')])
products = []
for i in range(n_products):
    t = Template(name='Article %02d' % (i + 1), default_uom=unit, type='goods', list_price=Decimal(10 * (i + 1)), account_category=cat)
    t.save()
    products.append(t.products[0])
bank, = Account.find([('code', '=', '5121')])
cash, = Journal.find([('code', '=', 'CASH')])
pm = PaymentMethod(name='Virement', journal=cash, debit_account=bank, credit_account=bank)
pm.save()
made = []
for i in range(n_invoices):
    # day i spread over the months, in order; dates stay within the first 28 days of each month
    month = 1 + (i * n_months) // n_invoices
    per_month = -(-n_invoices // n_months)
    day = datetime.date(year, month, 1 + (i % per_month) * 27 // max(per_month, 1))
    inv = Invoice(type='out', party=parties[i % n_parties], invoice_date=day)
    line = inv.lines.new(); line.product = products[i % n_products]; line.quantity = 1 + i % 4; line.unit_price = products[i % n_products].list_price
    inv.save()
    inv.click('post')
    pay = Wizard('account.invoice.pay', [inv])
    pay.form.payment_method = pm
    pay.form.date = day
    pay.execute('choice')
    inv.reload()
    made.append({'number': inv.number, 'state': inv.state, 'total': str(inv.total_amount), 'date': day.isoformat()})
closed = None
if d.get('close', True):
    first, = Period.find([('start_date', '=', datetime.date(year, 1, 1)), ('type', '=', 'standard')])
    first.click('close')
    first.reload()
    closed = [first.name, first.state]
print(json.dumps({'parties': n_parties, 'products': n_products, 'invoices': len(made), 'paid': sum(1 for m in made if m['state'] == 'paid'),
                  'closed': closed, 'first': made[0] if made else None, 'last': made[-1] if made else None}))
